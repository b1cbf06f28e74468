"""hubpipe: a TFX pipeline that reuses pretrained TensorFlow Hub modules for new tasks.

The top-level folders `pipeline/`, `components/` and `kubeflow/` install as
the packages `hubpipe.pipeline`, `hubpipe.components` and `hubpipe.kubeflow`
(hubpipe is a namespace package).

Install with the pinned stack (see README):
  pip install --ignore-requires-python -c constraints.txt -e '.[test]'
  pip install --no-deps tensorflow-hub==0.16.1
"""

from setuptools import find_packages, setup


def _packages(folder):
  return [f'hubpipe.{folder}'] + [
      f'hubpipe.{folder}.{p}' for p in find_packages(folder)]


setup(
    name='hubpipe',
    version='0.1.0',
    description='Reuse pretrained TensorFlow Hub modules in a production TFX pipeline.',
    python_requires='>=3.11,<3.12',
    packages=(_packages('pipeline') + _packages('components') +
              _packages('kubeflow')),
    package_dir={'hubpipe.pipeline': 'pipeline',
                 'hubpipe.components': 'components',
                 'hubpipe.kubeflow': 'kubeflow'},
    package_data={'hubpipe.pipeline': ['configs/*.yaml']},
    data_files=[(f'share/hubpipe/schemas/{name}',
                 [f'schemas/{name}/schema.pbtxt'])
                for name in ('image_classification', 'text_classification',
                             'image_classification_string_labels',
                             'text_classification_string_labels')],
    install_requires=[
        # Exact versions come from constraints.txt; tensorflow-hub 0.16.1 is
        # installed afterwards with --no-deps (tfx 1.16 pins <0.16, which does
        # not import on TF 2.16).
        'tfx',
        'tensorflow',
        'tf-keras',
        'tensorflow-transform',
        'tensorflow-model-analysis',
        'tensorflow-data-validation',
        'tensorflow-model-optimization',
        'apache-beam',
        'ml-metadata',
        'kfp',
        'pyyaml',
        'pillow',
        # Reading pretrained weights: Keras .h5 (MobileNetV2) and ONNX
        # (paraphrase-MiniLM-L3-v2) files.
        'h5py',
        'onnx',
    ],
    extras_require={
        # s3:// pipeline roots, data and serving dirs: TensorFlow's S3
        # filesystem (tensorflow-io) and Beam's (boto3).
        's3': ['tensorflow-io', 'boto3'],
        # moto: an S3 server on loopback for the object-storage tests.
        'test': ['pytest', 'scikit-image', 'tensorflow-io', 'boto3',
                 'moto[s3]', 'flask', 'flask-cors'],
    },
    entry_points={'console_scripts': ['hubpipe=hubpipe.pipeline.cli:entry']},
)
