"""The ground floor: option names, config dataclasses and presets, the mask schedules, training masks,
guidance settings and their combinator, counter-based random numbers, seeds, devices, atomic file
writes, and safe weight reading. Imports nothing else of emigm."""
