"""Dependencies shared by the routes."""

from typing import Annotated

from fastapi import Depends, Request

from service.controller import Controller


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]
