package oats;

import java.util.Map;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * An oats export opened for inference: the Java face of the Rust runtime (liboats_jni, a thin
 * JNI layer over oats-runtime). Open a directory with {@link #OatsModel(String, String)} or files
 * held in memory (Android assets) with {@link #fromFiles(Map, String)}; select a (lambda, width)
 * configuration; {@link #infer} NCHW float images. One instance may be used from any number of
 * threads: inferences run in parallel and a switch never waits for them. {@link #close()} frees
 * the native model (it waits for calls in progress; later calls throw IllegalStateException).
 */
public final class OatsModel implements AutoCloseable {
  static {
    String path = System.getProperty("oats.library");
    if (path != null) {
      System.load(path);
    } else {
      System.loadLibrary("oats_jni");
    }
  }

  /** A configuration of the model, as listed in the manifest or derived from the package. */
  public static final class Config {
    /** The manifest id, e.g. "l0.15-w1". */
    public final String id;
    /** The robustness weight. */
    public final double lambda;
    /** The channel width multiplier. */
    public final double width;
    /** Multiply-accumulates per image. */
    public final long macs;
    /** Calibrated clean accuracy in [0, 1], NaN when not calibrated. */
    public final double sa;
    /** Calibrated worst-case robust accuracy in [0, 1], NaN when not calibrated. */
    public final double ra;
    /** True when derived on the device from the package. */
    public final boolean derived;

    /** Side exits of the configuration (0 without); also the final classifier's exit index. */
    public final int sideExits;

    Config(String id, double lambda, double width, long macs, double sa, double ra, boolean derived,
        int sideExits) {
      this.id = id;
      this.lambda = lambda;
      this.width = width;
      this.macs = macs;
      this.sa = sa;
      this.ra = ra;
      this.derived = derived;
      this.sideExits = sideExits;
    }

    @Override
    public String toString() {
      return "Config(" + id + ", lambda " + lambda + ", width " + width + ", derived " + derived + ")";
    }
  }

  /** What {@link #infer} returns: logits, row-major [n][classes], and who computed them. */
  public static final class Result {
    /** n × classes logits, row-major. */
    public final float[] logits;
    /** The number of classes per row. */
    public final int classes;
    /** The configuration that computed them. */
    public final Config config;

    /**
     * Per image, the exit that answered it: 0 for the first side exit up to
     * {@code config.sideExits} for the final classifier (every image's, when the configuration
     * has no exits or no thresholds to route with).
     */
    public final int[] exits;

    Result(float[] logits, int classes, Config config, int[] exits) {
      this.logits = logits;
      this.classes = classes;
      this.config = config;
      this.exits = exits;
    }

    /** The index of the largest logit of row {@code i}. */
    public int argmax(int i) {
      int best = 0;
      for (int j = 1; j < classes; j++) {
        if (logits[i * classes + j] > logits[i * classes + best]) best = j;
      }
      return best;
    }
  }

  private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
  private long handle;

  /**
   * Opens the export in directory {@code dir}. {@code backend}: "tract" (pure Rust), "ort" or
   * "ort-cuda" (ONNX Runtime, library from the ORT_DYLIB_PATH environment variable, in a library
   * built with the ort feature).
   */
  public OatsModel(String dir, String backend) throws OatsException {
    this.handle = nativeOpen(dir, backend);
  }

  private OatsModel(long handle) {
    this.handle = handle;
  }

  /** Opens an export from files in memory: name as the manifest lists it → bytes. */
  public static OatsModel fromFiles(Map<String, byte[]> files, String backend) throws OatsException {
    String[] names = files.keySet().toArray(new String[0]);
    byte[][] contents = new byte[names.length][];
    for (int i = 0; i < names.length; i++) contents[i] = files.get(names[i]);
    return new OatsModel(nativeOpenFiles(names, contents, backend));
  }

  /** Makes (lambda, width) active: listed, or any trained-range lambda derived on the device. */
  public Config select(double lambda, double width) throws OatsException {
    return call(h -> nativeSelect(h, lambda, width, null));
  }

  /** Makes the configuration with this manifest id active. */
  public Config select(String id) throws OatsException {
    return call(h -> nativeSelect(h, Double.NaN, Double.NaN, id));
  }

  /**
   * Makes the best configuration under the constraints active, by the calibrated metrics.
   * NaN (or 0 for {@code maxMacs}) means no constraint; {@code objective}: "max-ra", "max-sa"
   * or "min-latency".
   */
  public Config selectPolicy(double minSa, double minRa, long maxMacs, String objective)
      throws OatsException {
    return call(h -> nativeSelectPolicy(h, minSa, minRa, maxMacs, objective));
  }

  /** The configurations the manifest lists. */
  public Config[] configs() throws OatsException {
    return call(OatsModel::nativeConfigs);
  }

  /** Runs the active configuration on {@code n} images of c×h×w floats (NCHW, row-major). */
  public Result infer(float[] input, int n, int c, int h, int w) throws OatsException {
    return call(hd -> nativeInfer(hd, input, n, c, h, w));
  }

  /**
   * Sets the entropy thresholds of the side exits, one per side exit (finite, &gt;= 0; 0 never
   * leaves early), for every configuration with exits; {@code null} returns to the calibrated
   * ones. Inferences in flight keep the thresholds they started with.
   */
  public void setThresholds(double[] thresholds) throws OatsException {
    call(h -> {
      nativeSetThresholds(h, thresholds);
      return null;
    });
  }

  /**
   * The thresholds the active configuration routes with (set, else calibrated), or
   * {@code null} when it has no exits or nothing to route with (the whole network runs).
   */
  public double[] thresholds() throws OatsException {
    return call(OatsModel::nativeThresholds);
  }

  /**
   * Multiply-accumulates of one image answered at each exit of the active configuration
   * (earlier heads included), the final classifier last; {@code null} without exits.
   */
  public long[] exitMacs() throws OatsException {
    return call(OatsModel::nativeExitMacs);
  }

  @Override
  public void close() {
    lock.writeLock().lock();
    try {
      if (handle != 0) {
        nativeClose(handle);
        handle = 0;
      }
    } finally {
      lock.writeLock().unlock();
    }
  }

  private interface NativeCall<T> {
    T apply(long handle) throws OatsException;
  }

  private <T> T call(NativeCall<T> f) throws OatsException {
    lock.readLock().lock();
    try {
      if (handle == 0) throw new IllegalStateException("OatsModel is closed");
      return f.apply(handle);
    } finally {
      lock.readLock().unlock();
    }
  }

  private static native long nativeOpen(String dir, String backend) throws OatsException;

  private static native long nativeOpenFiles(String[] names, byte[][] contents, String backend)
      throws OatsException;

  private static native Config nativeSelect(long handle, double lambda, double width, String id)
      throws OatsException;

  private static native Config nativeSelectPolicy(
      long handle, double minSa, double minRa, long maxMacs, String objective)
      throws OatsException;

  private static native Config[] nativeConfigs(long handle) throws OatsException;

  private static native Result nativeInfer(long handle, float[] input, int n, int c, int h, int w)
      throws OatsException;

  private static native void nativeSetThresholds(long handle, double[] thresholds)
      throws OatsException;

  private static native double[] nativeThresholds(long handle) throws OatsException;

  private static native long[] nativeExitMacs(long handle) throws OatsException;

  private static native void nativeClose(long handle);
}
