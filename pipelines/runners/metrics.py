"""A running job's Beam counters, read from the engine it runs on.

On a portable runner the job's counters live in the engine: Beam's job server
reports them only when the job is over, and the launching process's own
counters see nothing (its workers are other processes). Both engines keep
Beam's metrics in an accumulator, which their UIs show:

* **Flink**: the REST API's ``/jobs/<id>/accumulators`` (the job found by its
  name in ``/jobs/overview``): ``__metricscontainers``, the MonitoringInfos as
  JSON, updated as bundles finish.
* **Spark**: the driver's UI API (the job server is the driver),
  ``/api/v1/applications/<app>/stages``: ``Beam.Metrics`` as the text of a
  ``MetricQueryResults``, shown only for finished stages, each holding the
  running total then.

:class:`RunnerMetrics` reads whichever answers at the URL it is given.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.parse
import urllib.request
from collections import Counter

log = logging.getLogger(__name__)

USER_COUNTER_URN = "beam:metric:user:sum_int64:v1"
FLINK_ACCUMULATOR = "__metricscontainers"
TIMEOUT_S = 5.0


def user_counters(monitoring_json: str, namespace: str) -> Counter[str]:
    """Attempted user counters of ``namespace`` in Beam's MonitoringInfos JSON, summed by name."""
    counts: Counter[str] = Counter()
    try:
        document = json.loads(monitoring_json)
    except ValueError:
        return counts
    for info in (document.get("metrics") or {}).get("attempted") or []:
        labels = info.get("labels") or {}
        if info.get("urn") != USER_COUNTER_URN or labels.get("NAMESPACE") != namespace:
            continue
        counts[labels.get("NAME", "")] += _varint(base64.b64decode(info.get("payload", "")))
    return counts


def _varint(data: bytes) -> int:
    """A protobuf varint as a signed 64-bit integer."""
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value - (1 << 64) if value >= 1 << 63 else value


class RunnerMetrics:
    """The counters of the job named ``job_name``, from a Flink or Spark UI at ``url``."""

    def __init__(self, url: str, job_name: str) -> None:
        self.url = url.rstrip("/")
        self.job_name = job_name
        self._flink_job: str | None = None
        self._spark_app: str | None = None

    def counters(self, namespace: str) -> Counter[str] | None:
        """The job's counters now, or None while the engine does not know the job (yet)."""
        try:
            if self._flink_job or self._find_flink_job():
                return self._flink_counters(namespace)
            if self._spark_app or self._find_spark_app():
                return self._spark_counters(namespace)
        except (OSError, ValueError) as err:
            log.debug("runner metrics at %s: %s", self.url, err)
        return None

    def _find_flink_job(self) -> str | None:
        try:
            overview = get_json(f"{self.url}/jobs/overview")
        except ValueError:  # not Flink: Spark's UI answers HTML there
            return None
        if not isinstance(overview, dict):
            return None
        for job in overview.get("jobs", []):
            if job.get("name") == self.job_name:
                self._flink_job = job["jid"]
        return self._flink_job

    def _flink_counters(self, namespace: str) -> Counter[str]:
        document = get_json(f"{self.url}/jobs/{self._flink_job}/accumulators")
        counts: Counter[str] = Counter()
        for accumulator in document.get("user-task-accumulators", []):
            if accumulator.get("name") == FLINK_ACCUMULATOR:
                counts += user_counters(accumulator.get("value", ""), namespace)
        return counts

    def _find_spark_app(self) -> str | None:
        applications = get_json(f"{self.url}/api/v1/applications")
        if not isinstance(applications, list):
            return None
        for application in applications:  # named "<job name>_<invocation uuid>"
            if application.get("name", "").startswith(self.job_name + "_"):
                self._spark_app = application["id"]
        return self._spark_app

    def _spark_counters(self, namespace: str) -> Counter[str]:
        app = urllib.parse.quote(self._spark_app or "")
        stages = get_json(f"{self.url}/api/v1/applications/{app}/stages?details=false")
        counts: Counter[str] = Counter()
        for stage in stages or []:  # each finished stage shows the accumulator's running total
            for update in stage.get("accumulatorUpdates", []):
                totals = counters_in_query_results(update.get("value", ""), namespace)
                for name, value in totals.items():
                    counts[name] = max(counts[name], value)
        return counts


def counters_in_query_results(text: str, namespace: str) -> Counter[str]:
    """Counters of ``namespace`` in Beam's ``MetricQueryResults`` text, summed over steps.

    Spark shows Beam's accumulator as that text: ``Counters(<step>:beam:metric:user:
    sum_int64:v1 {NAMESPACE=<namespace>, NAME=<name>, PTRANSFORM=<step>}: <value>,
    ...)``. Our counter names hold no commas or braces.
    """
    counts: Counter[str] = Counter()
    pattern = rf"\{{NAMESPACE={re.escape(namespace)}, NAME=([^,}}]+)(?:, [^}}]*)?\}}: (-?\d+)"
    for match in re.finditer(pattern, text.partition("Distributions(")[0]):
        counts[match.group(1)] += int(match.group(2))
    return counts


def get_json(url: str):
    """The JSON at ``url``; OSError or ValueError when it cannot be had."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())
