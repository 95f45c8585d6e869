<?php
// Gives the load test's forum enough discussions (idempotent) that replies spread over
// them: with one discussion, every "reply post" step of every user lands in the same
// thread, which grows by thousands of posts over a long run and makes each later level
// slower than the last for a reason no real course has. Users pick a discussion at random.
//
//   seed_discussions.php FORUM_CMID N                        at least N discussions
//   seed_discussions.php FORUM_CMID --remove-replies SUBJECT  delete the load test's replies
//
// The second form runs after every load run: spreading alone still let each thread grow
// (37 posts a thread after a day of benchmark runs), so every later run walked heavier
// pages than the first. Only replies with the load test's subject and no reply of their
// own are deleted, through Moodle's forum_delete_post (files, ratings, read marks, events).
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->dirroot . '/mod/forum/lib.php');

$forumcmid = (int)($argv[1] ?? 0);
$cm = get_coursemodule_from_id('forum', $forumcmid, 0, false, MUST_EXIST);
\core\session\manager::set_user(get_admin());

if (($argv[2] ?? '') === '--remove-replies') {
    $subject = (string)($argv[3] ?? '');
    if ($subject === '') {
        fwrite(STDERR, "kit: --remove-replies needs the replies' subject\n");
        exit(2);
    }
    $forum = $DB->get_record('forum', ['id' => $cm->instance], '*', MUST_EXIST);
    $course = get_course($cm->course);
    $posts = $DB->get_records_sql(
        "SELECT p.* FROM {forum_posts} p JOIN {forum_discussions} d ON d.id = p.discussion
          WHERE d.forum = :forum AND p.parent <> 0 AND p.subject = :subject
                AND NOT EXISTS (SELECT 1 FROM {forum_posts} c WHERE c.parent = p.id)",
        ['forum' => $forum->id, 'subject' => $subject]);
    $removed = 0;
    foreach ($posts as $post) {
        if (forum_delete_post($post, false, $course, $cm, $forum, true)) {
            $removed++;
        }
    }
    echo "kit: removed {$removed} load-test replies\n";
    exit(0);
}

$wanted = max(1, (int)($argv[2] ?? 100));
$have = $DB->count_records('forum_discussions', ['forum' => $cm->instance]);
if ($have >= $wanted) {
    echo "kit: ok: forum has {$have} discussions\n";
    exit(0);
}
$generator = (new testing_data_generator())->get_plugin_generator('mod_forum');
$adminid = get_admin()->id;
for ($i = $have + 1; $i <= $wanted; $i++) {
    $generator->create_discussion(['course' => $cm->course, 'forum' => $cm->instance, 'userid' => $adminid,
        'name' => "Load test discussion $i", 'message' => "Students reply here during the load test ($i)."]);
}
echo "kit: changed: forum has {$wanted} discussions (added " . ($wanted - $have) . ")\n";
