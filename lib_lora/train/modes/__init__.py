"""Training modes: what a run learns and from what, behind one interface, in one ordered registry.

A mode (base.TrainingMode) supplies a run's data source, its per-batch loss and, where it has several phases
(copy-machine difference, train-and-merge rounds), what happens around them; TrainRun (loop.py) keeps the
stages every mode shares: the network, optimizer and scheduler, progress, saving, the GPU gate and
`host.training_mode()`. `registry.mode_for(name)` gives the mode of `ModeConfig.training_mode`.

    lora        lora.py        images and captions (the plain run)
    slider      slider.py      a concept slider from prompts alone (LECO / iLECO)
    difference  difference.py  what differs between an original and a target image (copy machine, ADDifT)
    rounds      rounds.py      train, merge into the working weights, train again; one LoRA of the total change

This package's __init__ imports nothing: config.py is read by the training config, the modes by the run.
"""
