from sicube.cli import run

run()
