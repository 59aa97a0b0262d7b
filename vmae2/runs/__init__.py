"""What each command runs: ``python -m vmae2.X`` parses its options (:mod:`vmae2.X`) and calls ``vmae2.runs.X.run``
(``train`` calls :func:`vmae2.runs.pretrain.run`)."""
