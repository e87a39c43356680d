"""The HTTP API: deployment verifications as jobs on Kafka (:mod:`~connectors.api.jobs`), their routes
(:mod:`~connectors.api.routes`), the OpenAPI document and the server (:mod:`~connectors.api.service`)."""

from connectors.api.jobs import Jobs
from connectors.api.routes import make_app
from connectors.api.service import ApiServer, run_api

__all__ = ["ApiServer", "Jobs", "make_app", "run_api"]
