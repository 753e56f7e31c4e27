"""Benchmarks of iot-guard against direct Mosquitto, measured in one run (`make bench`).

They print ratios (guard / direct) from the same run on the same machine; they are not
timed tests in the suite. ``python -m bench --help`` lists the knobs.
"""
