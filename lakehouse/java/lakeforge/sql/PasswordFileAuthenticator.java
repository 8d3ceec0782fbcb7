package lakeforge.sql;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import javax.crypto.SecretKeyFactory;
import javax.crypto.spec.PBEKeySpec;
import javax.security.sasl.AuthenticationException;
import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * HiveServer2's CUSTOM authentication against lakeforge's users file.
 *
 * <p>The file is named by the system property {@code lakeforge.sql.users_file} (the
 * Thrift server's {@code --hiveconf} sets it). Each line is {@code
 * user:pbkdf2_sha256:iterations:salt_hex:hash_hex}, as {@code lakeforge sql-server user}
 * writes it; the file is read at each login, so users added or removed take effect
 * without a restart. Passwords are compared as PBKDF2-HMAC-SHA256 digests, in constant
 * time.
 */
public final class PasswordFileAuthenticator implements PasswdAuthenticationProvider {
  public static final String FILE_PROPERTY = "lakeforge.sql.users_file";
  private static final String SCHEME = "pbkdf2_sha256";

  @Override
  public void Authenticate(String user, String password) throws AuthenticationException {
    String file = System.getProperty(FILE_PROPERTY, "");
    if (file.isEmpty()) {
      throw new AuthenticationException("no users file is configured (" + FILE_PROPERTY + ")");
    }
    List<String> lines;
    try {
      lines = Files.readAllLines(Path.of(file), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new AuthenticationException("cannot read the users file " + file, e);
    }
    if (user != null && password != null) {
      for (String line : lines) {
        String[] parts = line.trim().split(":");
        if (parts.length == 5 && parts[0].equals(user) && parts[1].equals(SCHEME)) {
          if (matches(password, parts)) {
            return;
          }
          break;
        }
      }
    }
    throw new AuthenticationException("wrong user name or password");
  }

  private static boolean matches(String password, String[] parts)
      throws AuthenticationException {
    try {
      int iterations = Integer.parseInt(parts[2]);
      byte[] salt = HexFormat.of().parseHex(parts[3]);
      byte[] expected = HexFormat.of().parseHex(parts[4]);
      PBEKeySpec spec = new PBEKeySpec(password.toCharArray(), salt, iterations,
          expected.length * 8);
      byte[] actual = SecretKeyFactory.getInstance("PBKDF2WithHmacSHA256")
          .generateSecret(spec).getEncoded();
      return MessageDigest.isEqual(expected, actual);
    } catch (IllegalArgumentException | GeneralSecurityException e) {
      throw new AuthenticationException("a malformed line in the users file", e);
    }
  }
}
