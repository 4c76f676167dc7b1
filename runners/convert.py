"""Command-line entry: convert annotations to the project's UFO JSON, or UFO JSON to ICDAR-2015 txt.

    python runners/convert.py FORMAT INPUT OUTPUT [--images DIR] [--missing skip|error] [--strip-upload-prefix]

FORMAT: icdar2015, sroie, labelme, labelstudio, to-icdar2015 (see ``ocr/data/convert.py``).
Same as ``python -m ocr.data.convert``.
"""

import sys

from ocr.data.convert import main

if __name__ == "__main__":
    sys.exit(main())
