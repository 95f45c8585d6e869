<?php
// Adds the kit's exam to a course (idempotent): a quiz "Kit exam" with ten true/false
// questions, open now, one attempt per student, for the exam-start load journey.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->dirroot . '/mod/quiz/locallib.php');
require_once($CFG->libdir . '/questionlib.php');

$courseid = (int)($argv[1] ?? 0);
$course = $DB->get_record('course', ['id' => $courseid], '*', MUST_EXIST);
\core\session\manager::set_user(get_admin());
$quiz = null;
foreach (get_fast_modinfo($course)->get_instances_of('quiz') as $cm) {
    if ($cm->name === 'Kit exam') {
        $quiz = $DB->get_record('quiz', ['id' => $cm->instance], '*', MUST_EXIST);
        $quiz->cmid = $cm->id;
        $quiz->coursemodule = $cm->id;
    }
}
$have = $quiz ? $DB->count_records('quiz_slots', ['quizid' => $quiz->id]) : 0;
if ($quiz && $have >= 10) {
    echo "kit: ok: exam exists (cmid {$quiz->cmid}, {$have} questions)\n";
    exit(0);
}
if (!$quiz) {
    // The module generator is plain API; the question generator needs PHPUnit, so questions
    // are saved through the question type's own API instead.
    $generator = new testing_data_generator();
    $quiz = $generator->get_plugin_generator('mod_quiz')->create_instance([
        'course' => $course->id, 'name' => 'Kit exam', 'questionsperpage' => 0, 'grade' => 10,
        'sumgrades' => 10, 'attempts' => 0, 'preferredbehaviour' => 'deferredfeedback',
    ]);
}
$context = context_course::instance($course->id);
$category = question_make_default_categories([$context]);
$empty = ['text' => '', 'format' => FORMAT_HTML];
for ($i = $have + 1; $i <= 10; $i++) {
    $form = (object)[
        'category' => $category->id . ',' . $context->id, 'name' => "Kit question $i",
        'questiontext' => ['text' => "Kit exam statement $i: true or false?", 'format' => FORMAT_HTML],
        'generalfeedback' => $empty, 'defaultmark' => 1, 'penalty' => 1, 'correctanswer' => $i % 2,
        'feedbacktrue' => $empty, 'feedbackfalse' => $empty, 'showstandardinstruction' => 0,
        'status' => \core_question\local\bank\question_version_status::QUESTION_STATUS_READY,
    ];
    $question = (object)['category' => $category->id, 'qtype' => 'truefalse', 'createdby' => $USER->id];
    $question = question_bank::get_qtype('truefalse')->save_question($question, $form);
    quiz_add_quiz_question($question->id, $quiz, 0);
}
echo "kit: changed: exam created (cmid {$quiz->cmid})\n";
