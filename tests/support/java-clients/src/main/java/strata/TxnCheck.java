package strata;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.FeatureMetadata;
import org.apache.kafka.clients.admin.FinalizedVersionRange;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TransactionDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerGroupMetadata;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A transactional producer of Kafka's Java client against one broker, with whatever transaction
 * version the broker finalizes (4.x runs version 2 when {@code transaction.version} is 2: no
 * AddPartitionsToTxn or AddOffsetsToTxn, EndTxn v5 bumping the epoch). Three transactions over
 * three partitions: committed with the group's offsets, aborted, committed; then a read_committed
 * consumer reads the topic.
 *
 * <p>Usage: {@code TxnCheck <bootstrap> <topic> <group>}. Prints {@code RESULT key=value} lines
 * that do not depend on which broker answered; exits 0 when every step ran.
 */
public final class TxnCheck {
    private static final int PARTITIONS = 3;
    private static final Map<String, String> RESULTS = new TreeMap<>();

    private TxnCheck() {
    }

    private static void result(String key, Object value) {
        RESULTS.put(key, String.valueOf(value));
    }

    private static short epochOf(Admin admin, String txnId) throws Exception {
        TransactionDescription d = admin.describeTransactions(List.of(txnId)).description(txnId)
                .get(60, TimeUnit.SECONDS);
        return (short) d.producerEpoch();
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        String group = args[2];
        String txnId = topic + "-tx";
        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        common.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 30_000);

        Properties pp = new Properties();
        pp.putAll(common);
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 1))).all().get(60, TimeUnit.SECONDS);
            FeatureMetadata features = admin.describeFeatures().featureMetadata().get(60, TimeUnit.SECONDS);
            FinalizedVersionRange tv = features.finalizedFeatures().get("transaction.version");
            result("finalized transaction.version", tv == null ? "none" : tv.maxVersionLevel());
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
                producer.initTransactions();
                short first = epochOf(admin, txnId);
                String[] outcome = {"commit", "abort", "commit"};
                for (int t = 0; t < outcome.length; t++) {
                    producer.beginTransaction();
                    for (int i = 0; i < PARTITIONS; i++) {
                        producer.send(new ProducerRecord<>(topic, i, "k", "t" + t + "-" + i));
                    }
                    producer.flush();
                    if (t == 0) {
                        Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                        offsets.put(new TopicPartition(topic, 0), new OffsetAndMetadata(42));
                        producer.sendOffsetsToTransaction(offsets, new ConsumerGroupMetadata(group));
                    }
                    if (outcome[t].equals("commit")) {
                        producer.commitTransaction();
                    } else {
                        producer.abortTransaction();
                    }
                }
                // Transaction version 2 bumps the epoch at every end (3), version 1 never (0).
                result("epoch bumps over three transactions", epochOf(admin, txnId) - first);
            }
            Map<TopicPartition, OffsetAndMetadata> committed =
                    admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(60, TimeUnit.SECONDS);
            result("group offset", committed.get(new TopicPartition(topic, 0)).offset());
        }

        Properties cp = new Properties();
        cp.putAll(common);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        List<String> values = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp)) {
            List<TopicPartition> parts = new ArrayList<>();
            for (int i = 0; i < PARTITIONS; i++) {
                parts.add(new TopicPartition(topic, i));
            }
            consumer.assign(parts);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (values.size() < 2 * PARTITIONS && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    values.add(r.value());
                }
            }
            for (int i = 0; i < 5; i++) {  // nothing more may come (the aborted transaction)
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    values.add(r.value());
                }
            }
        }
        Collections.sort(values);
        result("read_committed", values);
        for (Map.Entry<String, String> e : RESULTS.entrySet()) {
            System.out.println("RESULT " + e.getKey() + "=" + e.getValue());
        }
        System.exit(values.size() == 2 * PARTITIONS ? 0 : 1);
    }
}
