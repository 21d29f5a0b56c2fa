-- TensorFlow Lite: .tflite FlatBuffers from TensorFlow's and MediaPipe's public model buckets.
-- Sizes are estimates; scripts/check_urls.lua confirms them.
framework "tflite"

model "mobilenet-v1-quant-tflite" {
  name = "MobileNet v1 1.0 224 quantized image classifier (with metadata)",
  url  = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/task_library/image_classification/android/mobilenet_v1_1.0_224_quantized_1_metadata_1.tflite",
  size = "4.3 MB", tags = { "vision", "classification", "small" }, license = "apache-2.0",
}

model "ssd-mobilenet-v1-tflite" {
  name = "SSD MobileNet v1 object detector (with metadata)",
  url  = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/task_library/object_detection/android/lite-model_ssd_mobilenet_v1_1_metadata_2.tflite",
  size = "4.2 MB", tags = { "vision", "detection", "small" }, license = "apache-2.0",
}

model "text-classification-tflite" {
  name = "Movie review sentiment classifier",
  url  = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/text_classification/text_classification.tflite",
  size = "0.7 MB", tags = { "text", "classification", "sentiment", "tiny" }, license = "apache-2.0",
}

model "efficientnet-lite0-tflite" {
  name = "EfficientNet-Lite0 image classifier (MediaPipe, float32)",
  url  = "https://storage.googleapis.com/mediapipe-models/image_classifier/efficientnet_lite0/float32/1/efficientnet_lite0.tflite",
  size = "18 MB", tags = { "vision", "classification", "mediapipe" }, license = "apache-2.0",
}
