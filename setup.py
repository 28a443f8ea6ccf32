"""ament_python package definition (also a plain pip-installable package).

With a real ROS 2 install, `colcon build` uses this file; without one, scripts/setup.sh
installs it into a virtual environment with `pip install -e .[test]`.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "scal3r_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Online 3D mapping with Scal3R (Global Context Memory + GCS) as a ROS 2 node",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml", "LICENSE"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*")),
    ],
    # rclpy and the ROS message packages come from ROS (apt) or from the PyPI wheels that
    # scripts/setup.sh installs; they are not pip requirements of this package.
    install_requires=[
        "setuptools",
        "numpy>=1.24,<3",
        "torch>=2.4,<2.15",
        "scipy>=1.10",
        "pyyaml>=6",
        "pillow>=10",
        "gtsam>=4.2,<4.4",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "rosbags>=0.10,<0.12",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pymap3d>=3.0,<4",
        "opencv-python-headless>=4.8",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "evo>=1.28"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "scal3r_doctor = scal3r_ros.tools.doctor:main",
            "scal3r_mapping = scal3r_ros.ros.cli:console_main",
            "scal3r_synthetic_camera = scal3r_ros.tools.synthetic_camera:main",
            "scal3r_kitti_to_bag = scal3r_ros.tools.kitti_to_bag:main",
            "scal3r_play_bag = scal3r_ros.tools.bag_player:main",
            "scal3r_demo = scal3r_ros.tools.demo:main",
            "scal3r_evaluate = scal3r_ros.tools.evaluate:main",
            "scal3r_offline = scal3r_ros.tools.offline:main",
            "scal3r_bench = scal3r_ros.tools.bench:main",
            "scal3r_soak = scal3r_ros.tools.soak:main",
        ],
    },
)
