from vmbuild.cli import run

run()
