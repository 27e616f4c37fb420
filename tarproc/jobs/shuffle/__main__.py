"""``python -m tarproc.jobs.shuffle``: one shuffle task
(:func:`tarproc.jobs.shuffle.worker.main`), the pipeline of every task
:mod:`tarproc.jobs.shufflejob` runs."""

from tarproc.jobs.shuffle.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
