import com.amazon.randomcutforest.config.TransformMethod;
import com.amazon.randomcutforest.parkservices.AnomalyDescriptor;
import com.amazon.randomcutforest.parkservices.ThresholdedRandomCutForest;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;

/**
 * AWS's ThresholdedRandomCutForest over one stream, score then update each point.
 *
 * <p>Usage: {@code TrcfPeer TREES SAMPLES SHINGLE SEED WARMUP} with one value per line on
 * stdin. The first WARMUP values are processed (scored and learnt) without output; each
 * later value prints {@code score,grade,relative_index}. A last line {@code # seconds S}
 * gives the time spent on the printed points.
 */
public final class TrcfPeer {
    private TrcfPeer() {}

    public static void main(String[] args) throws Exception {
        int trees = Integer.parseInt(args[0]);
        int samples = Integer.parseInt(args[1]);
        int shingle = Integer.parseInt(args[2]);
        long seed = Long.parseLong(args[3]);
        int warmup = Integer.parseInt(args[4]);
        List<Double> values = new ArrayList<>();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in))) {
            for (String line; (line = in.readLine()) != null; ) {
                if (!line.isBlank()) {
                    values.add(Double.parseDouble(line.trim()));
                }
            }
        }
        ThresholdedRandomCutForest forest = ThresholdedRandomCutForest.builder()
                .dimensions(shingle).shingleSize(shingle).internalShinglingEnabled(true)
                .numberOfTrees(trees).sampleSize(samples).randomSeed(seed)
                .transformMethod(TransformMethod.NORMALIZE).build();
        PrintWriter out = new PrintWriter(System.out);
        long start = 0;
        for (int i = 0; i < values.size(); i++) {
            if (i == warmup) {
                start = System.nanoTime();
            }
            AnomalyDescriptor d = forest.process(new double[] {values.get(i)}, i);
            if (i >= warmup) {
                out.println(d.getRCFScore() + "," + d.getAnomalyGrade() + "," + d.getRelativeIndex());
            }
        }
        out.println("# seconds " + (System.nanoTime() - start) / 1e9);
        out.flush();
    }
}
