"""The typed args every serve app takes: where the state and the registry are, and access."""

import hashlib

from pydantic import BaseModel, ConfigDict, Field

import maas
from maas.config import ENV_NAME_PATTERN, expand_state_dir, sqlite_uri
from maas.registry import Registry
from serve_apps.gate import AccessArgs


class ReplicaArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(description="the maas state directory; '~' is expanded on the replica")
    registry_uri: str | None = Field(
        None, description="MLflow registry URI; null: the SQLite database under state_dir")
    key_env: str = Field("MAAS_MODEL_KEY", pattern=ENV_NAME_PATTERN,
                         description="environment variable with the key of encrypted models")
    access: AccessArgs | None = Field(None, description="null: no keys needed (access off)")

    def registry(self) -> Registry:
        return Registry(self.registry_uri or sqlite_uri(expand_state_dir(self.state_dir)),
                        key_env=self.key_env)

    def digest(self) -> str:
        """These settings and this maas release, hashed: what a deploy compares to decide
        whether the running replicas can stay (see maas.serving.deploy_model)."""
        text = f"{maas.__version__}\n{self.model_dump_json()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]
