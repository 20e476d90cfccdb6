// Driven by java/tests/jvm.rs: java -Doats.library=… OatsTest MODEL_DIR IMAGES.f32 N EXITS_DIR
// Prints "image <i> class <k>" at (0.15, 1.0), then checks errors, memory and threads; on the
// exit model in EXITS_DIR prints "routed image <i> exit <e> class <k>" with its calibrated
// thresholds and checks setting them; any failed expectation throws (exit status 1).
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import oats.OatsException;
import oats.OatsModel;

public class OatsTest {
  static void check(boolean ok, String what) {
    if (!ok) throw new AssertionError(what);
  }

  interface Call {
    void run() throws Exception;
  }

  static void expectKind(String kind, String needle, Call c) throws Exception {
    try {
      c.run();
    } catch (OatsException e) {
      check(e.kind.equals(kind), "kind " + e.kind + ", expected " + kind + ": " + e.getMessage());
      check(needle == null || e.getMessage().contains(needle),
          "message lacks \"" + needle + "\": " + e.getMessage());
      System.out.println("ok " + kind + ": " + e.getMessage());
      return;
    }
    throw new AssertionError("no OatsException of kind " + kind);
  }

  public static void main(String[] args) throws Exception {
    String dir = args[0];
    int n = Integer.parseInt(args[2]);
    ByteBuffer buf = ByteBuffer.wrap(Files.readAllBytes(Paths.get(args[1])))
        .order(ByteOrder.nativeOrder());
    float[] x = new float[buf.remaining() / 4];
    buf.asFloatBuffer().get(x);
    int per = x.length / n;
    final int c = 1, h = 28, w = 28;
    check(per == c * h * w, "images are 1×28×28");

    try (OatsModel m = new OatsModel(dir, "tract")) {
      OatsModel.Config cfg = m.select(0.15, 1.0);
      check(cfg.derived && cfg.id.equals("l0.15-w1"), "selected " + cfg);
      OatsModel.Result r = m.infer(x, n, c, h, w);
      check(r.config.id.equals("l0.15-w1"), "served " + r.config);
      for (int i = 0; i < n; i++) System.out.println("image " + i + " class " + r.argmax(i));
      check(m.configs().length > 0, "configs listed");
      check(!Double.isNaN(m.configs()[0].sa), "calibrated");

      expectKind("invalid-argument", "1.5", () -> m.select(1.5, 1.0));
      expectKind("invalid-argument", "0.6", () -> m.select(0.2, 0.6));
      expectKind("no-such-config", "no-such", () -> m.select("no-such"));
      expectKind("none-qualifies", "SA", () -> m.selectPolicy(1.01, Double.NaN, 0, "max-ra"));
      expectKind("invalid-argument", "objective", () -> m.selectPolicy(Double.NaN, Double.NaN, 0, "x"));
      expectKind("shape", null, () -> m.infer(x, n, c, h, w - 1));
      float[] bad = x.clone();
      bad[3] = Float.NaN;
      expectKind("non-finite", null, () -> m.infer(bad, n, c, h, w));
      OatsModel.Config robust = m.selectPolicy(Double.NaN, 0.6, 0, "max-sa");
      check(robust.ra >= 0.6 && robust.lambda > 0, "policy pick " + robust);

      // 4 threads infer while a fifth switches: each result is its configuration's.
      double[] lambdas = {0.0, 0.15, 1.0};
      Map<String, float[]> expected = new HashMap<>();
      for (double l : lambdas) {
        m.select(l, 1.0);
        OatsModel.Result e = m.infer(x, n, c, h, w);
        expected.put(e.config.id, e.logits);
      }
      AtomicReference<Throwable> failure = new AtomicReference<>();
      List<Thread> threads = new ArrayList<>();
      for (int t = 0; t < 4; t++) {
        threads.add(new Thread(() -> {
          try {
            for (int k = 0; k < 20; k++) {
              OatsModel.Result e = m.infer(x, n, c, h, w);
              check(java.util.Arrays.equals(e.logits, expected.get(e.config.id)), "logits of " + e.config);
            }
          } catch (Throwable e) {
            failure.compareAndSet(null, e);
          }
        }));
      }
      threads.add(new Thread(() -> {
        try {
          for (int k = 0; k < 300; k++) m.select(lambdas[k % 3], 1.0);
        } catch (Throwable e) {
          failure.compareAndSet(null, e);
        }
      }));
      for (Thread t : threads) t.start();
      for (Thread t : threads) t.join();
      if (failure.get() != null) throw new AssertionError("threads", failure.get());
      System.out.println("threads ok");

    }

    OatsModel closed = new OatsModel(dir, "tract");
    closed.close();
    closed.close(); // twice is fine
    try {
      closed.select(0.2, 1.0);
      throw new AssertionError("a closed model answered");
    } catch (IllegalStateException e) {
      System.out.println("ok closed: " + e.getMessage());
    }

    expectKind("read", "missing", () -> new OatsModel(dir + "/missing", "tract").close());
    expectKind("invalid-argument", "cuda", () -> new OatsModel(dir, "cuda").close());

    Map<String, byte[]> files = new HashMap<>();
    try (var s = Files.list(Paths.get(dir))) {
      for (Path p : (Iterable<Path>) s::iterator) {
        if (Files.isRegularFile(p)) files.put(p.getFileName().toString(), Files.readAllBytes(p));
      }
    }
    try (OatsModel m = OatsModel.fromFiles(files, "tract")) {
      check(m.select(0.15, 1.0).derived, "from memory");
      OatsModel.Result r = m.infer(x, n, c, h, w);
      for (int i = 0; i < n; i++) System.out.println("memory image " + i + " class " + r.argmax(i));
    }
    exits(args[3], dir, x, n);
    System.out.println("all ok");
  }

  static void exits(String exitsDir, String plainDir, float[] x, int n) throws Exception {
    final int c = 1, h = 28, w = 28;
    try (OatsModel m = new OatsModel(exitsDir, "tract")) {
      OatsModel.Config cfg = m.select("l1-w0.5");
      check(cfg.sideExits == 2, "side exits " + cfg.sideExits);
      long[] macs = m.exitMacs();
      check(macs.length == 3 && macs[0] < macs[1] && macs[1] < macs[2], "exit MACs");
      double[] calibrated = m.thresholds();
      check(calibrated != null && calibrated.length == 2, "calibrated thresholds");
      OatsModel.Result r = m.infer(x, n, c, h, w);
      for (int i = 0; i < n; i++) {
        System.out.println("routed image " + i + " exit " + r.exits[i] + " class " + r.argmax(i));
      }
      m.setThresholds(new double[] {0.0, 0.0});
      OatsModel.Result whole = m.infer(x, n, c, h, w);
      for (int e : whole.exits) check(e == 2, "never leaving: exit " + e);
      m.setThresholds(new double[] {10.0, 10.0});
      for (int e : m.infer(x, n, c, h, w).exits) check(e == 0, "all confident: exit " + e);
      expectKind("invalid-argument", "thresholds", () -> m.setThresholds(new double[] {0.5}));
      expectKind("invalid-argument", "thresholds",
          () -> m.setThresholds(new double[] {Double.NaN, 0.5}));
      m.setThresholds(null);
      check(java.util.Arrays.equals(m.thresholds(), calibrated), "back to the calibrated ones");
    }
    try (OatsModel m = new OatsModel(plainDir, "tract")) {
      check(m.thresholds() == null && m.exitMacs() == null, "a model without exits has none");
      OatsModel.Result r = m.infer(x, n, c, h, w);
      for (int e : r.exits) check(e == 0 && r.config.sideExits == 0, "final classifier: " + e);
      expectKind("invalid-argument", "exits", () -> m.setThresholds(new double[] {1.0}));
    }
    System.out.println("exits ok");
  }
}
