//! The `groupq` command line: quantize model checkpoints to GPTQ, AWQ or
//! compressed-tensors, dequantize them back, and inspect them. The binary
//! is a thin `clap` layer over this library, which the tests and the
//! example-model generator share.

pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod formats;
pub mod gguf;
pub mod gguf_job;
pub mod imatrix;
pub mod layout;
pub mod llama_mix;
pub mod staging;
pub mod tiny;
pub mod tiny_gguf;
