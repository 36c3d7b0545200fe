"""Studies built on lic_core's public API: each folder beside this file holds one study's protocol
(YAML), README (question, answer, commands) and compact committed results; the modules here run
and report them (``python -m studies.trunk_branch``, ``python -m studies.scratch_sweep``)."""
