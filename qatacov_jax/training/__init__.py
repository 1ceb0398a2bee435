"""Training: the model factory, losses, optimiser, jitted steps, the loop, run directories
and cross-validation.

    factory.py           config -> model + the preprocessing its weights expect
    losses.py optim.py   focal + dice, Adam with the trainable mask
    steps.py             train / validation / precise-BatchNorm steps, jitted over the mesh
    loop.py              train_and_evaluate(config, workdir)
    checkpoint.py        orbax latest/best checkpoints
    rundir.py            run-directory layout, configuration guard, load_model
    cross_validation.py  K folds and their summary
"""
