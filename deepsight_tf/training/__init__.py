"""Training: the loop and its callbacks, checkpoints, input pipeline, optimisers, schedules."""
