"""`maskml serve`: a browser app and an HTTP API over ImagePredictor and VideoTracker (needs the [app] extra).

    from maskml.serve import SessionManager, create_app, running_server
    app = create_app(SessionManager(maskml.load_model("mobile_sam"), maskml.load_model("cutie_small")))
    with running_server(app) as url:          # uvicorn on a free loopback port, in a thread
        ...                                   # http requests to url
"""
from maskml.serve.sessions import Limits, RequestError, Session, SessionManager

__all__ = ["Limits", "RequestError", "Session", "SessionManager", "create_app", "running_server"]


def __getattr__(name: str):
    # the web parts import FastAPI and uvicorn, which only the [app] extra installs
    if name == "create_app":
        from maskml.serve.app import create_app

        return create_app
    if name == "running_server":
        from maskml.serve.server import running_server

        return running_server
    raise AttributeError(name)
