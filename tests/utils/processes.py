"""The processes behind a running server: its Ray actors, to kill or freeze like a real fault."""

import os
import signal

import psutil

from tests.utils.server import Server

ACTOR = "InnerLoopWorker"  # Ray titles an actor's process `ray::<class>[.<method>]`


def descendants(server: Server) -> list[psutil.Process]:
    """Every live process the server started (Ray's head processes, workers, actors)."""
    try:
        return psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def actor_pids(server: Server) -> list[int]:
    """The pids of the server's live inner-loop actors."""
    pids = []
    for process in descendants(server):
        try:
            if ACTOR in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                pids.append(process.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    """Send `sig` to each of `pids` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL `processes` (e.g. what a SIGKILLed server leaves behind) and reap them."""
    signal_all([process.pid for process in processes], signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
