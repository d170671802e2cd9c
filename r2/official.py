"""``r2.official``: the released official R²-Tuning checkpoints, the name the user-facing docs use.

The code lives with the model it converts to (:mod:`r2.model.official`); this module is the
same API under its short name::

    from r2.official import convert_official, load_official_model
    convert_official("qvhighlights.pth", "runs/qvh-official", dataset="qvhighlights")
"""

from r2.model.official import (OFFICIAL_DATASETS, ConvertedCheckpoint, OfficialCheckpointError, convert_official,
                               dataset_from_filename, extract_state_dict, from_official_state_dict,
                               infer_config, load_checkpoint, load_official_model, official_key,
                               official_key_map, to_official_state_dict)

__all__ = ["OFFICIAL_DATASETS", "OfficialCheckpointError", "load_checkpoint", "extract_state_dict",
           "official_key", "official_key_map", "infer_config", "dataset_from_filename",
           "from_official_state_dict", "to_official_state_dict", "load_official_model", "convert_official",
           "ConvertedCheckpoint"]
