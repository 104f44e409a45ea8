"""This repository's modules under one name that cannot collide with yours.

``import crw.propagation`` (or ``crw.model``, ``crw.data``, ``crw.utils``, ...) works from any project once the
repository root is on ``sys.path``, even if that project has its own ``utils/``, ``data/`` or ``model.py``: the
package's path is the repository root, and every module of the repository imports its siblings through
``crw.``. The scripts (``train.py``, ``test.py``, ``eval/``) keep the release's layout.
"""
import os as _os

__path__ = [_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))]
