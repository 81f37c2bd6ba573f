"""The BentoML service's Kubernetes manifests, rendered by the same function the
serving/deployment asset uses (driftloop.serving.bento.render_kubernetes): a Deployment
with GPU requests, readiness (/readyz) and liveness (/livez) probes and a rolling update
that never drops below the asked replicas, and its Service. The image tag is the bento's
version, itself the content hash of the model bundle.

    python deploy/serving/render.py driftloop:<version> --image-repository REPO --gpus 1 > serving.yaml
    kubectl apply -f serving.yaml
"""

from __future__ import annotations

import argparse
import sys

import yaml

from driftloop.serving.bento import render_kubernetes


class _PlainDumper(yaml.SafeDumper):
    # Shared label dicts would otherwise become YAML anchors, which reviewers of a manifest should not have to resolve.
    def ignore_aliases(self, data):
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", help="bento tag, name:version (the serving/bento asset's `tag` metadata)")
    parser.add_argument("--image-repository", required=True, help="where the bento's image was pushed")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--namespace", default="driftloop")
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args(argv)
    manifests = render_kubernetes(args.tag, args.image_repository, args.gpus, args.namespace, args.replicas)
    sys.stdout.write(yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
