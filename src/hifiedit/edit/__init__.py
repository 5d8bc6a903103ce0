"""Edit parameters ψ and trained edits (DESIGN §1, "Editing training")."""

from hifiedit.edit.params import (
    Edit,
    EditParams,
    EditParamsConfig,
    edited_layers,
    in_interval,
    load_edit,
    resolve_edit_path,
    within_interval,
)

__all__ = ["Edit", "EditParams", "EditParamsConfig", "edited_layers", "in_interval", "load_edit",
           "resolve_edit_path", "within_interval"]
