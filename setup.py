"""LV segmentation in cardiac MRI: a TFX pipeline exported to TensorFlow Serving.

Exact versions of every dependency, transitive ones included, are in requirements.lock
(`make install` installs them); the ranges below only say what the code needs.
"""
from setuptools import find_packages, setup

setup(
    name="lvseg",
    version="0.1.0",
    description="TFX pipeline segmenting the left ventricle in cardiac MRI, served by TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["dataset", "dataset.*", "trainer", "trainer.*",
                                    "components", "components.*", "pipeline", "pipeline.*",
                                    "report", "report.*", "serving", "serving.*",
                                    "monitoring", "monitoring.*", "kubeflow", "kubeflow.*",
                                    "lvseg", "lvseg.*"]),
    package_data={"pipeline": ["schema/*.pbtxt"]},
    install_requires=[
        "tfx==1.16.*",
        "tensorflow==2.16.*",
        "tf-keras==2.16.*",
        "tensorflow-transform==1.16.*",
        "tensorflow-model-analysis==0.47.*",
        "tensorflow-serving-api==2.16.*",
        "apache-beam[gcp]==2.59.*",
        "kfp==2.5.*",
        "numpy<2",
        "scipy",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["lvseg=lvseg.cli:main"]},
)
