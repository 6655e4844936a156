"""One local Spark for the whole test run (starting one takes about ten seconds):
pyspark from the test extra, Java from Debian's default-jre-headless, which .ci/run
installs. Without Java a test fails in CI and is skipped elsewhere, saying what to install.
"""
from __future__ import annotations

import atexit
import os
import sys
import tempfile
from typing import Any, Optional

import pytest

from conftest import require_tool

_session: Optional[Any] = None


def local_spark() -> Any:
    """The test run's SparkSession (local mode, UTC, no UI, loopback only)."""
    global _session
    java_home = os.environ.get("JAVA_HOME", "")
    if not (java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK)):
        require_tool("java")  # as Spark: JAVA_HOME first, else the system's java
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        pytest.fail(f"pyspark is not installed in {sys.executable}: install the test extra "
                    "(./start.sh --test)")
    if _session is None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        _session = (SparkSession.builder.master("local[2]").appName("eccm-tests")
                    .config("spark.ui.enabled", "false")
                    .config("spark.driver.host", "127.0.0.1")
                    .config("spark.driver.bindAddress", "127.0.0.1")
                    .config("spark.sql.shuffle.partitions", "2")
                    .config("spark.sql.session.timeZone", "UTC")
                    .config("spark.sql.warehouse.dir",
                            tempfile.mkdtemp(prefix="eccm-spark-warehouse-"))
                    .getOrCreate())
        _session.sparkContext.setLogLevel("ERROR")
        atexit.register(_session.stop)
    return _session
