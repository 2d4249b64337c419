//! The wgpu device behind a device [`Stream`](crate::Stream) (feature
//! `wgpu`): the device and queue, their identity, the compiled pipelines,
//! and the error scopes that turn wgpu's errors into [`Error::Backend`].

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device and queue that plans and device buffers share.
pub(crate) struct WgpuDevice {
    /// Distinguishes devices, so that a buffer of one is never bound on another.
    pub id: u64,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Compiled compute pipelines by shader source.
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("id", &self.id)
            .field("name", &self.info.name)
            .finish()
    }
}

impl WgpuDevice {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> WgpuDevice {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let info = device.adapter_info();
        WgpuDevice {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            device,
            queue,
            info,
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` inside error scopes for validation, out-of-memory and
    /// internal errors: any error wgpu reports while `f` runs becomes
    /// `Error::Backend` naming `what`, instead of reaching wgpu's default
    /// handler (which panics).
    pub fn scoped<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let errors = [validation.pop(), oom.pop(), internal.pop()];
        for e in errors {
            if let Some(e) = pollster::block_on(e) {
                return Err(Error::Backend(format!("{what}: wgpu: {e}")));
            }
        }
        Ok(r)
    }

    /// The pipeline of a WGSL compute shader (entry point `main`), compiled
    /// once per device and source.
    pub fn pipeline(&self, source: String) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&source) {
            return Ok(p.clone());
        }
        let pipeline = self.scoped("compiling a groupq shader", || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("groupq"),
                    source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some("groupq"),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })?;
        let pipeline = Arc::new(pipeline);
        cache.insert(source, pipeline.clone());
        Ok(pipeline)
    }

    /// Waits until the queue has finished everything submitted so far.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Backend(format!("Stream::synchronize: wgpu: {e}")))
    }

    /// The bytes `[b0, b1)` (whole words) of `buffer` (`COPY_SRC`), after
    /// everything queued so far.
    pub fn read(&self, buffer: &wgpu::Buffer, b0: u64, b1: u64) -> Result<Vec<u8>> {
        let size = b1 - b0;
        let staging = self.scoped("reading device memory", || {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("groupq readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            enc.copy_buffer_to_buffer(buffer, b0, &staging, 0, size);
            self.queue.submit([enc.finish()]);
            staging
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Backend(format!("reading device memory: {e}"))),
            Err(_) => {
                return Err(Error::Backend(
                    "reading device memory: the map never completed".into(),
                ))
            }
        }
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Backend(format!("reading device memory: {e}")))?;
        let bytes = view.to_vec();
        drop(view);
        staging.unmap();
        Ok(bytes)
    }

    /// Whether the device can run f64 plans (64-bit integer arithmetic).
    pub fn has_int64(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::SHADER_INT64)
    }
}

/// The default adapter's device: a high-performance adapter if there are
/// several, with 64-bit integers where it has them and its largest limits.
pub(crate) fn open_default() -> Result<WgpuDevice> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    };
    let adapter = pollster::block_on(instance.request_adapter(&options)).map_err(|e| {
        Error::Backend(format!(
            "Stream::wgpu: no GPU adapter ({e}); install a Vulkan, Metal or DX12 driver \
             (on Debian/Ubuntu without a GPU, Mesa's lavapipe: apt-get install libvulkan1 mesa-vulkan-drivers)"
        ))
    })?;
    let wanted = wgpu::Features::SHADER_INT64;
    let desc = wgpu::DeviceDescriptor {
        label: Some("groupq"),
        required_features: adapter.features() & wanted,
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
        let name = adapter.get_info().name;
        Error::Backend(format!(
            "Stream::wgpu: adapter {name:?} refused a device: {e}"
        ))
    })?;
    Ok(WgpuDevice::new(device, queue))
}
