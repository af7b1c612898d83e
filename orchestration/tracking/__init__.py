"""MLflow WRITING, in one place: the driver is the only writer.

Trials never touch MLflow. They report to Ray Tune; `callback.MlflowTrialCallback` runs inside the Tune
driver and writes what they report (params, per-epoch metrics, the sample-grid PNG and checkpoints of
each epoch). So concurrent trials never write the embedded SQLite store concurrently, and a remote
cluster's workers need no access to the tracking server.

Layout of one sweep in MLflow: one experiment per sweep name; a parent run for the sweep; nested
runs per trial (phase "grid"), for the final run (phase "final"), for the CFG sweep (phase "cfg");
reference rows (untrained model, ground truth) once per experiment (phase "reference"). Every run
ends FINISHED or FAILED: the driver closes what it opened in `finally` blocks; a run that a killed
driver left RUNNING is reattached and closed by `--resume`.

    client    Tracker: explicit run ids, no global MLflow state
    callback  MlflowTrialCallback: every Tune trial as a nested run
    retry     RetryingClient: every call outlives a tracking server that is down for a while
    checks    the store's location and reachability, the UI command and link
    describe  runs described in words, datasets as inputs
    console   the lines the sweep prints
"""
