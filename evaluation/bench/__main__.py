"""How long scoring takes: `python -m evaluation.bench`."""

from evaluation.bench import main

main()
