"""Training: the model factory, losses, optimiser, jitted steps, the loop, run directories
and cross-validation.

    factory.py           config -> model + the preprocessing its weights expect
    losses.py            focal + dice, cross-entropies, and the loss a config selects
    optim.py             Adam with the trainable mask
    steps.py             train / evaluation / precise-BatchNorm steps, jitted over the mesh
    state.py             a run's Schedule (from the config) and RunState (what checkpoints hold)
    loop.py              train_and_evaluate(config, workdir)
    faults.py            what stops a run early: NaN losses, stop signals, a failing disk
    distributed.py       jax.distributed initialisation for multi-process runs
    checkpoint.py        orbax latest/best checkpoints
    rundir.py            run-directory layout, configuration guard, load_model
    cross_validation.py  K folds and their summary
"""
