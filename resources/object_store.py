"""A resource whose local folder is mirrored to object storage when a URL is set.

Each step (a process locally, a pod on Kubernetes) pulls the remote copy when the
resource is set up and pushes what it wrote when it is torn down, so the asset code
reads and writes the same local folder under both profiles.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from driftloop.storage import pull, push


class MirroredFolder(dg.ConfigurableResource):
    remote_url: str = Field(default="", description="Object storage copy, e.g. s3://bucket/prefix; empty: local folder only")
    endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, Ceph, ...); empty: AWS or $AWS_ENDPOINT_URL")

    def local_root(self) -> Path:
        raise NotImplementedError

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.remote_url:
            result = pull(self.remote_url, self.local_root(), self.endpoint_url)
            context.log.info(f"{self.remote_url}: pulled {len(result.copied)} files, {result.unchanged} already here")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self.remote_url and self.local_root().is_dir():
            result = push(self.local_root(), self.remote_url, self.endpoint_url)
            context.log.info(f"{self.remote_url}: pushed {len(result.copied)} files, {result.unchanged} unchanged")
