"""Dependencies shared by the routes."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError

from service.controller import Controller
from service.sweeps import Sweeps


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_sweeps(request: Request) -> Sweeps:
    return get_controller(request).sweeps


SweepsDep = Annotated[Sweeps, Depends(get_sweeps)]


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    return names.union(*(_query_names(sub) for sub in dependant.dependencies))


def known_query_only(request: Request) -> None:
    """Unknown query parameters are a 422, like unknown body fields: `?fromat=json` must not
    fall back silently to the default format."""
    known = _query_names(request.scope["route"].dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "Extra inputs are not permitted",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
