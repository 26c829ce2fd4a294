"""Built-in instruments shipped as FHIR JSON (Questionnaires, CodeSystems, ValueSets) and their
loader. May import only the standard library.
"""

from service.questionnaires.instruments.loader import (
    builtin_code_systems,
    builtin_value_sets,
    load_builtin_instruments,
)

__all__ = ["builtin_code_systems", "builtin_value_sets", "load_builtin_instruments"]
