"""What the tests share: data sets, tiny runs and chains, planted faults, hand-built models.

Test modules import from here (and take the fixtures conftest.py makes of it), never from one
another.
"""
