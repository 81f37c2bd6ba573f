"""Where a built bento goes live: the deployer the profile binds (as project_ml binds its
model store), so the serving assets never choose a target themselves. The local profile
binds `LocalDeployer` (the supervisor on this machine, on the stable port), the production
profile `KubernetesDeployer` (manifests for the cluster)."""

import dagster as dg
from pydantic import Field

from driftloop.layout import Layout
from driftloop.serving.deploy import KubernetesTarget, LocalTarget


class Deployer(dg.ConfigurableResource):
    """The interface the serving assets call: `target()` does the work."""

    home: str = Field(default="", description="The lineage's home whose bentos, supervisor and audit trail it uses; empty: DRIFTLOOP_HOME.")

    def layout(self) -> Layout:
        return Layout.at(self.home, {}) if self.home else Layout.from_env()

    def target(self) -> LocalTarget | KubernetesTarget:
        raise NotImplementedError(f"{type(self).__name__} names no deployment target")


class LocalDeployer(Deployer):
    port: int = Field(default=3001, ge=1, le=65535, description="The stable local port (DRIFTLOOP_SERVE_PORT).")
    control_port: int = Field(default=0, ge=0, le=65535, description="The supervisor's control port; 0: port + 1.")
    ready_timeout_s: int = Field(default=600, ge=10, description="How long a new version may take to become ready.")

    def target(self) -> LocalTarget:
        return LocalTarget(self.layout(), self.port, self.control_port, self.ready_timeout_s)


class KubernetesDeployer(Deployer):
    image_repository: str = Field(default="registry.local/driftloop", description="Where the bento's image is pushed.")
    namespace: str = "driftloop"
    replicas: int = Field(default=2, ge=1)
    gpus: int = Field(default=0, ge=0, description="GPUs each serving pod requests.")

    def target(self) -> KubernetesTarget:
        return KubernetesTarget(self.layout(), self.image_repository, self.namespace, self.replicas, self.gpus)
