"""The command line, `python -m emigm`: sampling, evaluation, schedules, training and exports."""
