"""`reptile`: serve the API, train one job without a server, or drive a running service
(jobs, sweeps, adaptations)."""

import typer

from api.cli.local import serve, train
from api.cli.remote import adapt, jobs_app, sweeps_app

app = typer.Typer(help="Reptile meta-learning service", no_args_is_help=True)
app.command()(serve)
app.command()(train)
app.add_typer(jobs_app, name="jobs")
app.add_typer(sweeps_app, name="sweeps")
app.command()(adapt)
