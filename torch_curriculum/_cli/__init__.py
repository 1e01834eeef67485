"""Sub-commands of ``torch-curriculum`` (one module each; see :mod:`torch_curriculum.cli`)."""
