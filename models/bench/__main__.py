"""The attribute DDPM's throughput report: `python -m models.bench`."""

from models.bench import main

main()
