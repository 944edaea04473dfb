"""`reptile`: serve the API, train one job without a server, or drive a running service."""

import typer

from api.cli.local import serve, train
from api.cli.remote import adapt, jobs_app

app = typer.Typer(help="Reptile meta-learning service", no_args_is_help=True)
app.command()(serve)
app.command()(train)
app.add_typer(jobs_app, name="jobs")
app.command()(adapt)
