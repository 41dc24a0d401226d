"""Caffe's data path: Datum records in LMDB, the DataTransformer, and the Data, ImageData,
HDF5Data and WindowData layers, SegNet's DenseImageData, DeepLab's ImageSegData and SSD's
AnnotatedData and VideoData as sources (importing this package registers them)."""
from runner.data import (annotated_data, dense_image_data, hdf5_data, image_data,  # noqa: F401
                         image_seg_data, source, video_data, window_data)  # (register the sources)
from runner.data.datum import DataError
from runner.data.image_data import ImageDataSource
from runner.data.source import DataSource
from runner.data.transformer import DataTransformer

__all__ = ["DataError", "DataSource", "DataTransformer", "ImageDataSource"]
