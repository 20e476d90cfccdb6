package oats;

/**
 * A runtime error, with its kind: "invalid-argument", "shape", "non-finite", "read",
 * "integrity", "manifest", "no-such-config", "none-qualifies", "unavailable", "engine" or
 * "other". The message names the file, value or configuration concerned.
 */
public class OatsException extends Exception {
  private static final long serialVersionUID = 1L;

  /** What kind of error this is (see the class documentation). */
  public final String kind;

  public OatsException(String kind, String message) {
    super(message);
    this.kind = kind;
  }
}
