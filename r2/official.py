"""``r2.official``: the released official R²-Tuning checkpoints, the name the user-facing docs use.

The code lives with the model it converts to (:mod:`r2.model.official`); this module is the
same API under its short name::

    from r2.official import convert_official, load_official_model
    convert_official("qvhighlights.pth", "runs/qvh-official", dataset="qvhighlights")
"""

from r2.model.official import *  # noqa: F401,F403
from r2.model.official import __all__  # noqa: F401
