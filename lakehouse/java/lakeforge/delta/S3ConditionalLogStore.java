package lakeforge.delta;

import io.delta.storage.HadoopFileSystemLogStore;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.util.Iterator;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.S3Configuration;
import software.amazon.awssdk.services.s3.model.PutObjectRequest;
import software.amazon.awssdk.services.s3.model.S3Exception;

/**
 * A Delta log store for S3 whose commits stay atomic across drivers.
 *
 * <p>Delta commits version N of a table by creating {@code _delta_log/N.json}, which must
 * fail when another writer created it first. Delta's own S3 log store checks that only
 * inside one driver. This one writes the file with a conditional {@code PutObject}
 * ({@code If-None-Match: *}): S3 (since 2024-08) and S3-compatible servers that
 * implement it refuse the second creation with 412, and Delta, told
 * {@link FileAlreadyExistsException}, re-reads the log and retries its commit. Reads
 * and listings are Hadoop's (S3 lists consistently). The client is configured from the
 * same {@code fs.s3a.*} settings as Spark's S3A filesystem; credentials come from the
 * AWS SDK's default chain.
 */
public class S3ConditionalLogStore extends HadoopFileSystemLogStore {
  private static final Map<String, S3Client> CLIENTS = new ConcurrentHashMap<>();

  public S3ConditionalLogStore(Configuration hadoopConf) {
    super(hadoopConf);
  }

  @Override
  public void write(Path path, Iterator<String> actions, Boolean overwrite,
                    Configuration hadoopConf) throws IOException {
    StringBuilder body = new StringBuilder();
    while (actions.hasNext()) {
      body.append(actions.next()).append('\n');
    }
    byte[] bytes = body.toString().getBytes(StandardCharsets.UTF_8);
    FileSystem fs = path.getFileSystem(hadoopConf);
    Path qualified = fs.makeQualified(path);
    String bucket = qualified.toUri().getHost();
    String key = qualified.toUri().getPath().replaceFirst("^/", "");
    PutObjectRequest.Builder request = PutObjectRequest.builder().bucket(bucket).key(key);
    if (!overwrite) {
      request.overrideConfiguration(o -> o.putHeader("If-None-Match", "*"));
    }
    try {
      client(hadoopConf).putObject(request.build(), RequestBody.fromBytes(bytes));
    } catch (S3Exception e) {
      // 412: the object exists; 409: another conditional write of it is in flight.
      if (!overwrite && (e.statusCode() == 412 || e.statusCode() == 409)) {
        throw new FileAlreadyExistsException(qualified.toString());
      }
      throw new IOException("conditional write of " + qualified + " failed: " + e.getMessage(), e);
    }
  }

  @Override
  public Boolean isPartialWriteVisible(Path path, Configuration hadoopConf) {
    return false;   // a PutObject is visible whole or not at all
  }

  private static S3Client client(Configuration conf) {
    String endpoint = conf.getTrimmed("fs.s3a.endpoint", "");
    String region = conf.getTrimmed("fs.s3a.endpoint.region", "us-east-1");
    boolean pathStyle = conf.getBoolean("fs.s3a.path.style.access", false);
    return CLIENTS.computeIfAbsent(endpoint + "|" + region + "|" + pathStyle, k -> {
      var builder = S3Client.builder()
          .region(Region.of(region))
          .credentialsProvider(DefaultCredentialsProvider.create())
          .serviceConfiguration(S3Configuration.builder().pathStyleAccessEnabled(pathStyle).build());
      if (!endpoint.isEmpty()) {
        String url = endpoint.contains("://") ? endpoint
            : (conf.getBoolean("fs.s3a.connection.ssl.enabled", true) ? "https://" : "http://")
                + endpoint;
        builder.endpointOverride(java.net.URI.create(url));
      }
      return builder.build();
    });
  }
}
