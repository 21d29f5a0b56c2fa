-- Core ML: .mlpackage bundles from Apple's Hub repos, fetched as repo snapshots and kept whole.
-- Sizes are estimates; scripts/check_urls.lua confirms them.
framework "coreml"

model "fastvit-t8-coreml" {
  name = "FastViT T8 image classifier (Core ML, F16)",
  hub  = { repo = "apple/coreml-FastViT-T8", include = { "FastViTT8F16.mlpackage/**" } },
  size = "8 MB", tags = { "vision", "classification", "small", "apple" },
}

model "depth-anything-small-coreml" {
  name = "Depth Anything small (Core ML, F16)",
  hub  = { repo = "apple/coreml-depth-anything-small", include = { "DepthAnythingSmallF16.mlpackage/**" } },
  size = "50 MB", tags = { "vision", "depth", "apple" }, license = "apache-2.0",
}

model "detr-resnet50-segmentation-coreml" {
  name = "DETR ResNet-50 semantic segmentation (Core ML, F16)",
  hub  = { repo = "apple/coreml-detr-semantic-segmentation",
           include = { "DETRResnet50SemanticSegmentationF16.mlpackage/**" } },
  size = "86 MB", tags = { "vision", "segmentation", "apple" }, license = "apache-2.0",
}
